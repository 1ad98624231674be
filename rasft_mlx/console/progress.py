"""Progress and prompt interruption for long phases (rollouts, evaluation, reference passes).

A run attaches its console (`attached`); phases report through `phase(...)`: a live bar on a
terminal, a plain line at most every `PLAIN_EVERY_SECONDS` elsewhere, nothing when no console is
attached (library use, tests). A stop request (the first SIGINT/SIGTERM) makes `check()` raise
`PhaseInterrupted` at the next chunk boundary, so a phase ends within seconds; the training loop
then checkpoints the state from before the phase and `--resume` redoes it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

PLAIN_EVERY_SECONDS = float(os.environ.get("RASFT_MLX_PROGRESS_EVERY", "10"))

_console: Console | None = None
_live: Progress | None = None
_stop = threading.Event()
_running_phases = 0


class PhaseInterrupted(Exception):
    """A stop was requested while a long phase ran; its partial work is discarded."""


def request_stop() -> None:
    _stop.set()


def clear_stop() -> None:
    _stop.clear()


def stop_requested() -> bool:
    return _stop.is_set()


def phase_running() -> bool:
    """Whether a phase is running now (it checks for stop requests between its chunks)."""
    return _running_phases > 0


def check(label: str = "phase") -> None:
    """Raise PhaseInterrupted when a stop was requested (call between chunks of work)."""
    if _stop.is_set():
        raise PhaseInterrupted(label)


@contextmanager
def attached(console: Console | None) -> Iterator[None]:
    """Report phases on `console` inside the block."""
    global _console
    previous, _console = _console, console
    try:
        yield
    finally:
        _console = previous


@contextmanager
def sharing(live: Progress | None) -> Iterator[None]:
    """Phases inside the block add their bars to `live` (the training display's progress), since
    a terminal holds one live display at a time."""
    global _live
    previous, _live = _live, live
    try:
        yield
    finally:
        _live = previous


def remaining_seconds(
    elapsed: float, done: int, total: int, tokens: int, token_budget: int, unused: int
) -> float | None:
    """The ETA of a phase. With a token budget (decoding: sequences x max new tokens) it is the
    budget still open (less what finished sequences will never use) at the token rate so far, so
    a batched decode, where sequences finish together, estimates well from its first steps; else
    the time per finished item. None before anything to go on, or once done."""
    if done >= total or elapsed <= 0:
        return None
    if token_budget and tokens:
        return max(token_budget - tokens - unused, 0) * elapsed / tokens
    if done:
        return elapsed / done * (total - done)
    return None


class PhaseReporter:
    """Counts done items and generated tokens; shows them as a bar on a terminal (in the shared
    live display when there is one) or as plain lines at most every PLAIN_EVERY_SECONDS."""

    def __init__(
        self, console: Console | None, label: str, total: int, unit: str, token_budget: int = 0
    ):
        self.console, self.label, self.total, self.unit = console, label, total, unit
        self.token_budget = token_budget
        self.done = self.tokens = self.unused = 0
        self.started = self.last_line = time.perf_counter()
        self.bar: Progress | None = None
        self.owns_bar = False
        if console is None or not console.is_terminal or total <= 0:
            return
        self.bar = _live
        if self.bar is None:
            self.owns_bar = True
            self.bar = Progress(
                TextColumn("[bold]{task.description}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self.bar.start()
        self.task = self.bar.add_task(label, total=total, stats="")

    def advance(self, done: int = 0, tokens: int = 0, unused: int = 0) -> None:
        """`done` more items finished, `tokens` more generated; `unused`: budget tokens that the
        items finished now will not generate (they stopped before max new tokens)."""
        self.done = min(self.done + done, self.total)
        self.tokens += tokens
        self.unused += unused
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, stats=self._rate())
            return
        now = time.perf_counter()
        if self.console is not None and now - self.last_line >= PLAIN_EVERY_SECONDS:
            self.last_line = now
            self.console.print(self.line(), soft_wrap=True, highlight=False)

    def _eta(self, elapsed: float) -> float | None:
        return remaining_seconds(
            elapsed, self.done, self.total, self.tokens, self.token_budget, self.unused
        )

    def _rate(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        parts = [f"{self.tokens / elapsed:.0f} tok/s"] if self.tokens else []
        eta = self._eta(elapsed)
        if eta is not None:
            parts.append(f"eta {eta:.0f} s")
        return ", ".join(parts)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        text = f"{self.label}: {self.done}/{self.total} {self.unit}"
        if self.tokens:
            text += f", {self.tokens / max(elapsed, 1e-9):.0f} tok/s"
        eta = self._eta(elapsed)
        if eta is not None:
            text += f", eta {eta:.0f} s"
        return text

    def close(self) -> None:
        if self.bar is None:
            return
        if self.owns_bar:
            self.bar.stop()
        else:
            self.bar.remove_task(self.task)


@contextmanager
def phase(
    label: str, total: int, unit: str = "sequences", token_budget: int = 0
) -> Iterator[PhaseReporter]:
    """A long phase of `total` items (`token_budget`: the most tokens it can generate, for a
    token-based ETA): report progress through the yielded reporter."""
    global _running_phases
    check(label)
    reporter = PhaseReporter(_console, label, total, unit, token_budget)
    _running_phases += 1
    try:
        yield reporter
    finally:
        _running_phases -= 1
        reporter.close()
