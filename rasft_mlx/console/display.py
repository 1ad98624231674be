"""Console output of a run: a rich live progress bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from rasft_mlx.console.progress import sharing


def format_bytes(n: float) -> str:
    unit, scale = next(
        ((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)) if n >= s), ("B", 1)
    )
    return f"{n / scale:.2f} {unit}" if scale > 1 else f"{int(n)} B"


def readable(value) -> str:
    """A record's value as a table cell a person reads: `{"truncated": 90, "wrong": 6}` ->
    `truncated 90, wrong 6`; `{"mean": .5, "min": .1, "max": .9}` -> `mean 0.5 (min 0.1, max 0.9)`."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        if not value:
            return "none"
        rest = dict(value)
        text = ""
        if {"mean", "min", "max"} <= rest.keys():
            text = (
                f"mean {readable(rest.pop('mean'))} "
                f"(min {readable(rest.pop('min'))}, max {readable(rest.pop('max'))})"
            )
        others = ", ".join(f"{k.replace('_', ' ')} {readable(v)}" for k, v in rest.items())
        return ", ".join(part for part in (text, others) if part)
    if isinstance(value, (list, tuple)):
        return ", ".join(readable(v) for v in value) or "none"
    return str(value)


def format_stats(stats: dict) -> str:
    return (
        f"loss {stats['loss']:.4f}  lr {stats['learning_rate']:.2e}  "
        f"{stats['tokens_per_second']:.0f} tok/s  peak {stats['peak_memory_gb']:.2f} GB"
    )


class TrainingDisplay:
    """Shows step, loss, lr, tok/s, ETA and peak memory while training."""

    def __init__(self, console: Console, total_steps: int, log_every: int = 1):
        self.console = console
        self.total_steps = total_steps
        self.log_every = log_every
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> TrainingDisplay:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=4,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total_steps, stats="")
            self._sharing = sharing(self._progress)  # phases add their bars to this display
            self._sharing.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._sharing.__exit__(*exc)
            self._progress.__exit__(*exc)
            self._progress = None

    def set_total(self, total_steps: int) -> None:
        self.total_steps = total_steps
        if self._progress is not None:
            self._progress.update(self._task, total=total_steps)

    def step(self, step: int, stats: dict) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=format_stats(stats))
        elif step % self.log_every == 0 or step == self.total_steps:
            eta = stats.get("eta_seconds")
            eta_text = f"  eta {eta:.0f}s" if eta is not None else ""
            self.console.print(f"step {step}/{self.total_steps}  {format_stats(stats)}{eta_text}")

    def message(self, text: str) -> None:
        self.console.print(text)


def benchmark_results_table(model: str, adapter, results) -> Table:
    """One row per benchmark and, for several, their mean (as the authors' harness reports)."""
    first = results[0].summary
    sampled = all(r.summary.avg_at_k is not None for r in results)
    table = Table(title=f"eval: {model}" + (f" + {adapter}" if adapter else ""))
    if len(results) > 1:
        table.add_column("benchmark")
    table.add_column("problems", justify="right")
    table.add_column("pass@1 (greedy)", justify="right")
    if sampled:
        table.add_column(f"avg@{first.samples} (T={first.temperature})", justify="right")
        table.add_column("mixed groups", justify="right")
    table.add_column("tok/s", justify="right")
    for result in results:
        summary = result.summary
        row = [result.name] if len(results) > 1 else []
        row += [str(summary.problems), f"{summary.pass_at_1:.3f}"]
        if sampled:
            row.append(f"{summary.avg_at_k:.3f}")
            row.append("-" if summary.mixed_share is None else f"{summary.mixed_share:.0%}")
        row.append(f"{summary.generated_tokens / max(summary.seconds, 1e-9):.0f}")
        table.add_row(*row)
    if len(results) > 1:
        count = len(results)
        mean = ["mean", str(sum(r.summary.problems for r in results))]
        mean.append(f"{sum(r.summary.pass_at_1 for r in results) / count:.3f}")
        if sampled:
            mean.append(f"{sum(r.summary.avg_at_k for r in results) / count:.3f}")
            mean.append("")
        table.add_row(*mean, "", end_section=True)
    return table
